"""The record of how each mixed-precision search was tuned: per method, the runs of one option's values
(the method's conf and its variants in conf/quant/tuning/, one fine-tuning seed), judged on the held-out
set under one decode; the test sets take no part.

A group is a list of exp dirs, the method's conf first (the value it carries now). The option is what
their composed quant confs (system.yaml's `conf`) differ in. Each run: its held-out WER and word errors,
and MAPSSWE against the first run on the same utterances. The value kept is the first run's unless
another is significantly better (p < 0.05, fewer errors); the lowest WER is shown beside it, so a
difference too small to decide is visible but does not move the conf.
"""
import os

from mpq_plugins.eval.report import fmt_p
from mpq_plugins.eval.sctk import ScoringError
from mpq_plugins.eval.significance import compare, utterance_errors
from mpq_plugins.record import read_system


def flatten(conf, prefix=""):
    """{dotted key: value} of a nested mapping's leaves (a list is one leaf)."""
    out = {}
    for k, v in (conf or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def option_of(confs):
    """The dotted keys in which the composed confs differ (what a tuning group varies)."""
    flat = [flatten(c) for c in confs]
    keys = sorted(set().union(*flat))
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def sgml(exp_dir, decode, valid_set):
    path = os.path.join(exp_dir, decode, valid_set, "score_wer", "hyp.trn.sgml")
    if not os.path.exists(path):
        raise ScoringError(f"{exp_dir}: not decoded and scored on {valid_set} under {decode} ({path} missing): "
                           f"run its stages 6-8 with --quant_test_sets {valid_set}")
    return path


def group_rows(exp_dirs, decode, valid_set):
    """The rows of one group (its first run the conf's current value): dicts of name, method, option (text),
    values, wer, errors, words, vs_first (MAPSSWE against the first run, None for it), and kept (bool)."""
    if len(exp_dirs) < 2:
        raise ValueError(f"a tuning group needs the method's conf and at least one variant: {' '.join(exp_dirs)}")
    recs = [read_system(d) for d in exp_dirs]
    methods = {r["method"] for r in recs}
    if len(methods) > 1:
        raise ValueError(f"a tuning group mixes methods ({', '.join(sorted(methods))}): {' '.join(exp_dirs)}")
    keys = option_of([r["conf"] for r in recs])
    if not keys:
        raise ValueError(f"the runs of a tuning group have one and the same quant conf: {' '.join(exp_dirs)}")
    first_sgml = sgml(exp_dirs[0], decode, valid_set)
    rows = []
    for d, r in zip(exp_dirs, recs):
        errs = utterance_errors(sgml(d, decode, valid_set))
        errors, words = sum(e for e, _ in errs.values()), sum(n for _, n in errs.values())
        flat = flatten(r["conf"])
        vs = None if d == exp_dirs[0] else compare(sgml(d, decode, valid_set), first_sgml, r["system"],
                                                   recs[0]["system"], os.path.join(d, decode, valid_set, "mapsswe_vs",
                                                                                   recs[0]["system"]))
        rows.append({"name": r["system"], "method": r["description"], "option": ", ".join(k.split(".")[-1] for k in keys),
                     "values": ", ".join(str(flat.get(k)) for k in keys), "wer": 100 * errors / max(words, 1),
                     "errors": errors, "words": words, "vs_first": vs, "quant_conf": r.get("quant_conf")})
    better = [x for x in rows[1:] if x["vs_first"]["significant"] and x["errors"] < rows[0]["errors"]]
    kept = min(better, key=lambda x: x["errors"]) if better else rows[0]
    for x in rows:
        x["kept"] = x is kept
    return rows


def kept_confs(grouped):
    """[(the method's quant conf, the quant conf of the run kept)] of group_rows' results, one per group:
    what a later budget runs for that method (the second is the first unless a variant won)."""
    out = []
    for rows in grouped:
        kept = next(x for x in rows if x["kept"])
        if not rows[0]["quant_conf"] or not kept["quant_conf"]:
            raise ValueError(f"{rows[0]['name']}: its record names no quant_conf (rerun its stage 6)")
        out.append((rows[0]["quant_conf"], kept["quant_conf"]))
    return out


def tuning_table(grouped, valid_set):
    """Markdown lines: one table over the groups (group_rows' results, the method's conf first)."""
    lines = [f"|method|option|value|run|{valid_set} WER|{valid_set} errors (words)|against the conf's value "
             f"(errors, MAPSSWE p)|lowest {valid_set} WER|kept|", "|---|---|---|---|---|---|---|---|---|"]
    for rows in grouped:
        best = min(rows, key=lambda x: x["errors"])
        for x in rows:
            v = x["vs_first"]
            against = "(the conf's value)" if v is None else (
                f"{x['errors'] - rows[0]['errors']:+d}, p {fmt_p(v['p'])}" + (" (**sig.**)" if v["significant"] else ""))
            lines.append(f"|{x['method']}|{x['option']}|{x['values']}|{x['name']}|{x['wer']:.2f}|"
                         f"{x['errors']} ({x['words']})|{against}|{'yes' if x is best else ''}|"
                         f"{'**yes**' if x['kept'] else ''}|")
    return lines
