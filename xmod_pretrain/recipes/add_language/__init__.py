"""Add-language: grow a trained run by new languages whose modules alone are trained."""
