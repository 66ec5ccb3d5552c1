#!/bin/bash
# Prepare a large corpus on Slurm: an array of tasks, each preparing every N-th language of the
# request into one shared --out; the task that finishes last writes manifest.json. Every argument
# goes to `xmod_pretrain prepare`. From the repository root, with --out on a filesystem all nodes
# share:
#
#   mkdir -p logs
#   # 1. The tokenizer, once (a language-balanced sample of the corpus; or give --tokenizer):
#   python -m data_prep.prepare --source /shared/fineweb-2 --out /shared/data --tokenizer-only
#   # 2. The languages, 16 tasks (the same arguments, as they were given to step 1):
#   sbatch --array=0-15 slurm/prepare.sh --source /shared/fineweb-2 --out /shared/data
#
# A task that dies (a node lost, a time limit, kill -9) leaves the languages it finished marked
# done; submitting the same array again (the whole of it: tasks are numbered within the array, and
# the finished ones exit in seconds) prepares only what is left, and the result is the same, byte
# for byte, as one preparation on one machine.
#
#SBATCH --job-name=xmod-prepare
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16       # one encoding process per CPU (--workers below)
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%A_%a.out
##SBATCH --partition=cpu         # site-specific: delete one '#' and name the partition
##SBATCH --account=my-project    # site-specific: likewise where jobs are charged to an account
set -euo pipefail

# site-specific: the software environment (`source ~/venvs/xmod/bin/activate`), or PYTHON=...
PYTHON=${PYTHON:-python}

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  echo "slurm/prepare.sh is an array job: sbatch --array=0-N slurm/prepare.sh ARGS" >&2
  exit 2
fi
index=$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))
echo "job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}: task $index of $SLURM_ARRAY_TASK_COUNT" \
  "on $(hostname -s); arguments: $*"
# --workers first: one given among the arguments wins.
exec "$PYTHON" -m data_prep.prepare --workers "${SLURM_CPUS_PER_TASK:-1}" "$@" \
  --task "$index/$SLURM_ARRAY_TASK_COUNT"
