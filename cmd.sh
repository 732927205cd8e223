# The job runner for each kind of job (Kaldi convention).
#   run.pl   : run on this machine (default)
#   slurm.pl : submit to a Slurm cluster; set cmd_backend=slurm (options in conf/slurm.conf)
cmd_backend=${cmd_backend:-local}
if [ "${cmd_backend}" = local ]; then
    export train_cmd="run.pl"
    export cuda_cmd="run.pl"
    export decode_cmd="run.pl"
elif [ "${cmd_backend}" = slurm ]; then
    export train_cmd="slurm.pl"
    export cuda_cmd="slurm.pl"
    export decode_cmd="slurm.pl"
else
    echo "cmd.sh: unknown cmd_backend=${cmd_backend} (local or slurm)" >&2
    return 1
fi
