#!/bin/bash
# usage (repo root): BASE=path/to/base bash docs/replication/curation-pilots/run.sh RESULTS_DIR SECONDS "VARIANT:SEED ..."
res=$1; limit=$2; mkdir -p $res
export PATH=$PWD/.venv/bin:$PATH PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
for vs in $3; do
  v=${vs%:*}; s=${vs#*:}
  timeout $limit python3 docs/replication/curation-pilots/grid_mix.py $v $s $res > $res/$v-$s.log 2>&1 &
done
wait
