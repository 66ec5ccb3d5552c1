#!/bin/bash
# Pre-train X-MOD on Slurm: one task per node runs torchrun, which starts one training process per
# GPU of its node (one process per node, on the CPU, where a node has no GPU). Every argument is a
# Hydra override for `python -m xmod_pretrain`. From the repository root:
#
#   mkdir -p logs      # Slurm opens the log below before this script runs: without the folder the
#                      # job fails at launch (JobLaunchFailure) and leaves no log at all
#   sbatch slurm/train.sh +exp=base data.dir=/shared/xmod-base train.max_steps=125000
#   sbatch --nodes=4 --gpus-per-node=4 slurm/train.sh +exp=large ...   # sbatch options go first
#
# The job runs in the directory it was submitted from (or --chdir), on every node: the repository,
# run_dir and data.dir must be on a filesystem all nodes share.
#
# run_dir defaults to runs/<job name>-<job id>. A job requeued near its time limit (below) keeps its
# id, finds its checkpoints there and resumes from them. Pass run_dir=... to choose the directory,
# for instance to continue an earlier job's run.
#
# Lines marked "site-specific" depend on the cluster.
#
#SBATCH --job-name=xmod
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1      # one torchrun per node; it starts that node's training processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32       # for the node's one task: 4 CPUs per training process
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out  # stdout and stderr of every node in one file
#SBATCH --open-mode=append       # a requeued job adds to its log instead of overwriting it
#SBATCH --requeue
#SBATCH --signal=B:USR1@180      # to this shell 3 min before the time limit: checkpoint, requeue
##SBATCH --partition=gpu         # site-specific: delete one '#' and name the partition
##SBATCH --account=my-project    # site-specific: likewise where jobs are charged to an account
set -euo pipefail

# site-specific: the software environment. Load it here (`module load cuda nccl`,
# `source ~/venvs/xmod/bin/activate`), or submit with PYTHON=/path/to/venv/bin/python.
PYTHON=${PYTHON:-python}

# The first node hosts the rendezvous. The port follows the job id, so jobs sharing a node seldom
# collide, and stays below Linux's ephemeral ports (32768 and up), which outgoing connections take.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 10000))}

# One training process per GPU this job sees on the node (Slurm sets CUDA_VISIBLE_DEVICES); nodes
# are assumed alike, and GPUS_PER_NODE=N skips the probe. Without a GPU, one process per node.
GPUS_PER_NODE=${GPUS_PER_NODE:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}
NPROC_PER_NODE=$((GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1))

# The run directory follows the job id, which a requeued job keeps: it resumes from its checkpoints.
run_dir_given=false
for arg in "$@"; do
  case $arg in run_dir=* | ++run_dir=*) run_dir_given=true ;; esac
done
$run_dir_given || set -- "$@" "run_dir=runs/$SLURM_JOB_NAME-$SLURM_JOB_ID"

echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}):" \
  "$SLURM_NNODES nodes ($SLURM_JOB_NODELIST) x $NPROC_PER_NODE processes," \
  "rendezvous $MASTER_ADDR:$MASTER_PORT; overrides: $*"

# Near the time limit Slurm sends USR1 here (--signal above; on preemption too where the site sets
# PreemptParameters=send_user_signal). The trainer saves a checkpoint and exits on SIGTERM, so the
# step gets SIGTERM, and once it is done the job goes back to the queue under the same id.
# NOTE: the signal goes through scancel, which without --batch/--full signals the job's steps and
# not this shell: srun itself would turn a SIGTERM it receives into SIGKILL for its tasks.
# torchrun passes it on to its workers and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds for them
# before it kills them: 150 leaves the checkpoint most of the 180 s (older torch versions ignore the
# variable and wait 30 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-150}
requeue() {
  echo "job $SLURM_JOB_ID: USR1, checkpointing and requeueing"
  scancel --signal=TERM "$SLURM_JOB_ID"
  wait "$step" || true
  # torchrun reports the signal it passed on as a SignalException traceback and srun then says
  # "error: ... exit code 1": both read like a crash, so say what they mean.
  echo "job $SLURM_JOB_ID: requeued, not failed: the training processes saved a checkpoint and" \
    "stopped on SIGTERM (the SignalException and srun's exit code 1 above are torchrun reporting" \
    "that signal); the job resumes from the checkpoint when it runs again"
  scontrol requeue "$SLURM_JOB_ID"  # this ends the shell; the job restarts later with this script
}

# What each node runs: torchrun, told whether its node hosts the rendezvous store. Its own guess
# compares the endpoint with the machine's hostname and addresses, and where a node's hostname is
# not its Slurm name no node takes the store and the rendezvous fails. `$PYTHON -m
# torch.distributed.run` is torchrun under the interpreter that trains, whatever `torchrun` is
# first on PATH. The first line names each task's node in the log.
export PYTHON MASTER_ADDR MASTER_PORT NPROC_PER_NODE
# shellcheck disable=SC2016  # expanded by each node's shell, not this one
node_command='
echo "node $(hostname): task $SLURM_PROCID of $SLURM_NTASKS, node index $SLURM_NODEID"
[ "$SLURMD_NODENAME" = "$MASTER_ADDR" ] && is_host=1 || is_host=0
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "$SLURM_NNODES" --nproc_per_node "$NPROC_PER_NODE" --rdzv_id "$SLURM_JOB_ID" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_conf "is_host=$is_host" \
  -m xmod_pretrain "$@"'

# --kill-on-bad-exit: a node that fails takes the others down at once, instead of leaving them
# blocked in a collective until it times out. --cpus-per-task: in Slurm 22.05 to 23.02 a step does
# not inherit it from the job, and torchrun and its workers would then share one CPU.
srun --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" bash -c "$node_command" bash "$@" &
step=$!
# bash runs a trap only between commands: waiting on a background step lets USR1 in at once.
trap requeue USR1
wait "$step"
