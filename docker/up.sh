#!/usr/bin/env bash
# Start a generated deployment in its framework's image with docker compose.
#
#   docker/up.sh WORKDIR [--ngc] [--gpu] [--build] [--server NAME] [--dry-run]
#
# WORKDIR: a deployment directory written by a servingbench run (results/<run>/manifests/<framework>-<label>/,
# it holds launch.json).  --gpu: CUDA images and a GPU reservation (automatic for device: cuda deployments);
# --ngc: Triton from NVIDIA's NGC container; --server: which server of a several-server deployment (MLflow);
# --dry-run: print the compose configuration instead of starting.  The cache mounted is $SERVINGBENCH_CACHE or
# ~/.cache/servingbench (the model artifacts and Triton's backend directory live there).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
[ -d "$1" ] || { echo "up.sh: $1 is not a directory" >&2; exit 2; }
workdir=$(cd "$1" && pwd); shift
launch="$workdir/launch.json"
[ -f "$launch" ] || { echo "up.sh: no $launch: run the deployment once with servingbench first" >&2; exit 2; }
read -r framework device < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["framework"], r["device"])' "$launch")
files=(-f "$here/compose.yaml")
service=$framework gpu=0 up=(up) dry=0
[ "$device" = cuda ] && gpu=1
while [ $# -gt 0 ]; do
  case $1 in
    --gpu) gpu=1 ;;
    --ngc) [ "$framework" = triton ] || { echo "up.sh: --ngc is for triton deployments" >&2; exit 2; }; service=triton-ngc ;;
    --build) up+=(--build) ;;
    --server) export SERVINGBENCH_SERVER=$2; shift ;;
    --dry-run) dry=1 ;;
    *) usage ;;
  esac
  shift
done
[ "$gpu" = 1 ] && files+=(-f "$here/compose.gpu.yaml")
export WORKDIR=$workdir SB_UID=$(id -u) SB_GID=$(id -g)
export SB_CACHE=${SERVINGBENCH_CACHE:-$HOME/.cache/servingbench}
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
if [ "$dry" = 1 ]; then
  exec "${compose[@]}" "${files[@]}" --profile "$service" config
fi
exec "${compose[@]}" "${files[@]}" "${up[@]}" "$service"
