"""Run a command and add its wall-clock and CPU seconds (its own and its children's) to a json log.

    python -m mpq_plugins.bin.timed --log exp/asr_w4/compression_time.json --what train -- cmd args...

The log is a list of {"what", "wall_s", "cpu_s", "rc"}. An interrupted command (Ctrl-C, or a kill
with SIGTERM) is logged with its status (130 or 143): what it finished (ESPnet's epochs) a rerun resumes from rather than redoes, so
the total counts it; run.sh does not rerun a step that is done, so nothing is counted twice. Exits with
the command's status; an interruption is one line, not a traceback.

With --resumable DIR, a rerun first drops the failed or interrupted entries of the same step when
DIR/checkpoint.pth is not there: the step starts over (a search; a one-epoch fine-tuning cut before
ESPnet saved its first checkpoint) and its lost minutes would otherwise be charged to the method.
A step that resumes from DIR/checkpoint.pth keeps them: their work is in the result.
"""
import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time


def interrupted(signum, _frame):
    raise KeyboardInterrupt(signum)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", required=True)
    p.add_argument("--what", required=True)
    p.add_argument("--resumable", metavar="DIR", default=None,
                   help="drop this step's earlier failed entries unless DIR/checkpoint.pth lets the rerun resume")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        sys.exit("timed: no command given")
    if a.resumable is not None and not os.path.exists(os.path.join(a.resumable, "checkpoint.pth")):
        log = read_log(a.log)
        kept = [e for e in log if e["what"] != a.what or e["rc"] == 0]
        if len(kept) != len(log):
            print(f"timed: {a.what}: starts over; {len(log) - len(kept)} cut run(s) not counted", file=sys.stderr)
            write_log(a.log, kept)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    child = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        rc = child.wait()
    except KeyboardInterrupt as e:   # the child has the same signal (one process group): let it stop, then log
        rc = child.wait()
        rc = rc if rc > 0 else 128 + (e.args[0] if e.args else signal.SIGINT)
        print(f"timed: {a.what}: interrupted after {time.time() - t0:.0f} s (logged in {a.log})", file=sys.stderr)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    entry = {"what": a.what, "wall_s": round(time.time() - t0, 2),
             "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2), "rc": rc}
    write_log(a.log, read_log(a.log) + [entry])
    sys.exit(rc)


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def write_log(path, log):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(log, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
