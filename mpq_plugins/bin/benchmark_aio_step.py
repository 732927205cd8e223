"""The cost of one-pass all-in-one training against training every system alone: one update of the nested
model beside one step of each system's twin, as the recipe configures them; writes the figures to a markdown
file (and json beside it).

    python -m mpq_plugins.bin.benchmark_aio_step --out results/benchmark_aio_step.md
        [--quant_conf conf/quant/aio_d432_ff_w42.yaml --batch 12 --seconds 3 --repeats 8]

The configs are the recipe's own (mpq_plugins.bin.quant_config: conf/train_asr_conformer.yaml, conf/finetune.yaml
and the quant conf): the nested model learns from the float teacher (its largest system) and from the largest
(the others), each twin is its system's architecture and bits learning from the float teacher. Weights are
random (a float model of the base conf: the teacher, and the start of the nested model and of each twin, cut to
its shape as the recipe cuts it); time does not depend on them. A step is forward, backward and Adam on the same
batch in training mode (the default recipe's batch: 12 utterances of 3 s), on one thread (--threads). The nested
model's update trains a different sample of systems each time: its figure is the mean over repeats, as are the
twins' (a run's time is a sum); all take turns, so a busier moment of the machine falls on all alike. At equal
updates, the one pass costs the mean update and the twins the sum of their steps: their ratio is what the
recipe's report measures on whole runs (which add validation, packing and start-up).
"""
import argparse
import os
import random
import statistics
import tempfile
import time

import torch
import yaml

from mpq_plugins.bin.benchmark_quant import interleaved_times, steady_allocator, write_report
from mpq_plugins.bin.quant_config import training_config
from mpq_plugins.confio import read_config
from mpq_plugins.espnet.load import build_from_config
from mpq_plugins.espnet.nested import export_float
from mpq_plugins.espnet.task import QuantASRTask
from mpq_plugins.eval.report import environment

ONE = "one pass (an update)"
TOKENS = ["<blank>", "<unk>"] + [chr(ord("A") + i) for i in range(26)] + ["'", "<space>", "<sos/eos>"]


def optimizer(model, conf):
    args = QuantASRTask.get_parser().parse_args([])   # the options the config leaves out: ESPnet's defaults
    vars(args).update(conf)
    (opt,) = QuantASRTask.build_optimizers(args, model)
    return opt


def timed_turns(fns, repeats):
    """({name: seconds of the first call}, {name: [seconds of the next repeats]}) of each function, taking
    turns in a rotating order."""
    first = {}
    for n, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[n] = time.perf_counter() - t0
    return first, interleaved_times(fns, repeats, warmup=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/benchmark_aio_step.md")
    p.add_argument("--base", default="conf/train_asr_conformer.yaml")
    p.add_argument("--finetune", default="conf/finetune.yaml")
    p.add_argument("--quant_conf", default="conf/quant/aio_d432_ff_w42.yaml")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch's threads (the recipe's lanes train on one each)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    res = {"batch": a.batch, "seconds": a.seconds, "threads": torch.get_num_threads(), "repeats": a.repeats,
           "steady_allocator": steady_allocator(), "quant_conf": a.quant_conf}
    g = torch.Generator().manual_seed(1)
    n = int(a.seconds * 16000)
    batch = (torch.randn(a.batch, n, generator=g) * 0.1, torch.full((a.batch,), n),
             torch.randint(2, len(TOKENS) - 1, (a.batch, int(a.seconds * 13)), generator=g),
             torch.full((a.batch,), int(a.seconds * 13)))
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        float_conf = {**read_config(a.base), "token_list": TOKENS, "normalize": "utterance_mvn"}
        torch.manual_seed(0)
        float_model = build_from_config(float_conf, a.base)
        teacher = os.path.join(tmp, "float.pth")
        torch.save(float_model.state_dict(), teacher)
        with open(os.path.join(tmp, "config.yaml"), "w") as f:
            yaml.safe_dump(float_conf, f)

        def make(system=None):
            conf = {**training_config(a.base, a.finetune, a.quant_conf, teacher_model=teacher, aio_system=system),
                    "token_list": TOKENS, "normalize": "utterance_mvn"}
            model = build_from_config(conf, a.quant_conf)
            if system is None:
                model.load_state_dict(float_model.state_dict(), strict=False)    # as --init_param does
            else:
                _, state = export_float(float_model, float_conf, cfg, cfg.by_name(system))   # the twin's start
                model.load_state_dict(state, strict=False)
            model.train()
            opt = optimizer(model, conf)

            def step():
                opt.zero_grad()
                loss = model(*batch)[0]
                loss.backward()
                opt.step()
            return model, step

        print("benchmark_aio_step: building the nested model and its twins ...", flush=True)
        nested, fns[ONE] = make()
        cfg = nested.aio
        for s in cfg.system_list:
            fns[f"{s.name} twin"] = make(s.name)[1]
        print(f"benchmark_aio_step: timing {len(fns)} steps x {a.repeats} ...", flush=True)
        first, times = timed_turns(fns, a.repeats)
    means = {k: statistics.mean(v) for k, v in times.items()}
    res["step_s"], res["first_step_s"] = times, first
    one = means[ONE]
    twins = sum(v for k, v in means.items() if k != ONE)
    res["ratio"] = twins / one
    res["systems_per_update"] = len(cfg.plan(random.Random(0)))
    lines = ["# One-pass all-in-one training against training each system alone: the cost of a step", "",
             f"Written by `python -m mpq_plugins.bin.benchmark_aio_step --out {a.out}` in {time.time() - t0:.0f} s: "
             f"{a.quant_conf} ({len(cfg.system_list)} nested systems, {res['systems_per_update']} trained an update) "
             f"over {a.base} with random weights, a batch of {a.batch} x {a.seconds:g} s, forward + backward + Adam "
             f"in training mode, {res['threads']} thread(s); means of {a.repeats} repeats, all taking turns.", "",
             "## Environment", ""] + environment() + [
             "", f"**At equal updates the {len(cfg.system_list)} twins cost {res['ratio']:.2f}x the one pass** "
             f"(the sum of their steps, {twins:.3f} s, against an update of the nested model, {one:.3f} s).", "",
             "The first step of each also starts every quantizer's step from its weight (the MSE search of "
             "numerics.py), once a run: the nested model for each of its bit-widths.", "",
             "|step|mean (s)|min (s)|max (s)|first step (s)|", "|---|---|---|---|---|"]
    lines += [f"|{k}|{means[k]:.3f}|{min(v):.3f}|{max(v):.3f}|{first[k]:.1f}|" for k, v in times.items()]
    lines += [f"|the {len(cfg.system_list)} twins|{twins:.3f}|||{sum(v for k, v in first.items() if k != ONE):.1f}|"]
    write_report(a.out, lines, res)


if __name__ == "__main__":
    main()
