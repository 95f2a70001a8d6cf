#!/usr/bin/env bash
# Multi-node, multi-GPU training of a monai_ext bundle with torchrun under Slurm.
#
#   sbatch --nodes=2 --gpus-per-node=4 scripts/slurm_multi_node.sh bundles/vindr_cxr_cardiomegaly_classification [overrides...]
#
# One torchrun per node; torchrun starts one process per GPU and they meet at the c10d rendezvous
# on the first node. The multi_gpu_train.yaml override picks NCCL when CUDA is present (gloo on CPU).
# Any extra arguments are passed to `monai.bundle run` (e.g. --epochs 100 --dataset_dir /data/vindr).
#SBATCH --job-name=monai_ext
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
set -euo pipefail
BUNDLE=${1:?usage: slurm_multi_node.sh BUNDLE_DIR [overrides...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NNODES=${SLURM_NNODES:-1}
HEAD_NODE=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
PORT=${MASTER_PORT:-29500}
cd "$BUNDLE"
srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="${SLURM_JOB_ID}" --rdzv_backend=c10d --rdzv_endpoint="${HEAD_NODE}:${PORT}" \
    -m monai.bundle run \
    --config_file "['configs/train.yaml','configs/multi_gpu_train.yaml']" \
    --meta_file configs/metadata.json --logging_file configs/logging.conf \
    "$@"
