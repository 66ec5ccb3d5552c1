"""What the test files share: launching the real CLI (launch), the commands several files run
(commands, hf) and the trained runs built once per suite across the xdist workers (runs)."""
