#!/usr/bin/env python3
"""Summary of a scripts/gpu_check.sh run: summary.json and summary.md in OUT.

    gpu_summary.py LOGS OUT

LOGS holds stages.jsonl and each stage's NAME.out (the JSON a bench or the PyTorch reference
printed) and NAME.log. Standard library only.
"""
import json
import pathlib
import sys

TARGETS = {
    "first step, no cache (s)": ("a_cold", "first_step_s", "<=", 60),
    "first step, warm cache (s)": ("warm_best", "first_step_s", "<=", 15),
    "fashion_edm emulsion / PyTorch eager": ("ratio_fashion", None, ">=", 0.5),
    "cifar emulsion / PyTorch eager": ("ratio_cifar", None, ">=", 0.5),
    "Inception images/s": ("fid", "images_per_s", ">=", 1000),
}


def read_json(path):
    try:
        lines = [l for l in path.read_text().splitlines() if l.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, json.JSONDecodeError):
        return None


def main(logs, out):
    logs, out = pathlib.Path(logs), pathlib.Path(out)
    stages = {}
    for line in (logs / "stages.jsonl").read_text().splitlines() if (logs / "stages.jsonl").exists() else []:
        entry = json.loads(line)
        name = entry["stage"]
        entry["result"] = read_json(logs / f"{name}.out")
        if entry.get("rc") not in (None, 0):
            tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:] if (logs / f"{name}.log").exists() else []
            entry["error_tail"] = tail
        stages[name] = entry
    result = lambda name: (stages.get(name) or {}).get("result") or {}
    summary = {
        "gpu": (logs / "gpu.txt").read_text().strip() if (logs / "gpu.txt").exists() else None,
        "commit": (logs / "commit.txt").read_text().strip() if (logs / "commit.txt").exists() else None,
        "faster_build": read_json(logs / "faster.json"),
        "stages": stages,
    }
    derived = {}
    warm = [result(n) for n in ("a_warm", "b_warm") if result(n).get("first_step_s")]
    if warm:
        derived["warm_best"] = {"first_step_s": min(r["first_step_s"] for r in warm)}
    for config, ours, theirs in (("fashion", ("b_warm", "a_warm", "a_cold", "b_cold"), "torch_fashion"), ("cifar", ("cifar", "cifar_auto"), "torch_cifar")):
        mine = max((result(n).get("images_per_s", 0) for n in ours), default=0)
        torch = result(theirs).get("images_per_s")
        if mine and torch:
            derived[f"ratio_{config}"] = mine / torch
        compiled = result(f"compile_{config}").get("images_per_s")
        if mine and compiled:
            derived[f"ratio_{config}_compile"] = mine / compiled
    summary["derived"] = derived

    verdicts = []
    for label, (source, key, op, bound) in TARGETS.items():
        value = derived.get(source) if key is None else (derived.get(source) or result(source)).get(key)
        if value is None:
            verdicts.append((label, None, f"{op} {bound}", "not measured"))
        else:
            ok = value <= bound if op == "<=" else value >= bound
            verdicts.append((label, value, f"{op} {bound}", "met" if ok else "missed"))
    summary["targets"] = [dict(zip(("target", "value", "bound", "verdict"), v)) for v in verdicts]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    md = [f"# GPU check: {summary['gpu']}", "", f"commit {summary['commit']}", ""]
    md += ["| stage | rc | seconds | first step s | images/s | peak device MiB | last loss |", "|---|---|---|---|---|---|---|"]
    for name, s in stages.items():
        r = s.get("result") or {}
        fmt = lambda v, f: "" if v is None else format(v, f)
        md.append(f"| {name} | {s.get('rc', s.get('status'))} | {fmt(s.get('seconds'), '.1f')} | {fmt(r.get('first_step_s', r.get('startup_s')), '.2f')} | "
                  f"{fmt(r.get('images_per_s'), '.1f')} | {fmt(r.get('peak_device_mib'), '.0f')} | {fmt(r.get('final_loss'), '.4f')} |")
    md += ["", "Device memory: Emulsion's is what its allocator had reserved at the syncs (after the first step, at each window's end); PyTorch's is `torch.cuda.max_memory_reserved()`."]
    md += ["", "| target | value | bound | verdict |", "|---|---|---|---|"]
    md += [f"| {t} | {'' if v is None else format(v, '.3g')} | {b} | {d} |" for t, v, b, d in verdicts]
    if summary["faster_build"]:
        md += ["", f"faster build: {summary['faster_build']}"]
    if (logs / "assign.out").exists():
        md += ["", "## bench assign", "", (logs / "assign.out").read_text()]
    for name, s in stages.items():
        if s.get("error_tail"):
            md += ["", f"## {name} failed (rc {s['rc']})", "", "```", *s["error_tail"], "```"]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
