#!/usr/bin/env python3
"""Turn benchmark JSON lines into the side-by-side tables of BENCHMARKS.md.

Usage: python3 scripts/benchmarks.py RESULTS.jsonl [--section cpu] [--write BENCHMARKS.md]

RESULTS.jsonl holds the lines of `dino bench` ("impl": "dinoscope") and of
scripts/bench_reference.py ("impl": "official"), as scripts/bench-cpu.sh writes them, plus one
{"mode": "meta", …} line describing the machine. Lines that describe the same work (mode and
configuration) are paired; each row shows both and the ratio ours / official, where higher is
better for throughput (img/s) and the ratio of latencies is inverted so > 1 always means
dinoscope is faster. Without --write the tables go to stdout; with it, the text between
`<!-- SECTION:begin -->` and `<!-- SECTION:end -->` in that file is replaced (the markers are
appended when missing), so each section can be regenerated on its own.
"""
import argparse
import json
import sys

# What identifies "the same work" in each mode.
KEYS = {
    "step": ["device_kind", "method", "arch", "patch", "depth", "batch", "global_size", "local_size", "local_crops",
             "out_dim", "precision", "threads"],
    "data": ["global_size", "local_size", "local_crops", "workers"],
    "viewer": ["device_kind", "arch", "patch", "image_size", "threads"],
    "matmul": ["device_kind", "arch", "patch", "depth", "batch", "global_size", "local_size", "local_crops",
               "out_dim", "threads"],
}


def device_kind(line):
    d = str(line.get("device", "cpu")).lower()
    return "cpu" if d.startswith("cpu") else "gpu"


def key(line):
    line = dict(line, device_kind=device_kind(line), method=line.get("method", "dino"))
    return (line["mode"],) + tuple(str(line.get(k)) for k in KEYS[line["mode"]])


def load(path):
    lines = []
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            raw = raw.strip()
            if not raw.startswith("{"):
                continue
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not a JSON line ({e}); rerun the benchmark that wrote it")
    return lines


def pair(lines):
    """Rows of (ours, official): each of our lines with the official line of the same work
    (several of ours, e.g. WGSL and SPIR-V, can share one official line), in order."""
    official = {}
    for line in lines:
        if line.get("mode") in KEYS and line.get("impl") == "official":
            official[key(line)] = line
    rows, used = [], set()
    for line in lines:
        if line.get("mode") not in KEYS or line.get("impl") == "official":
            continue
        k = key(line)
        rows.append({"ours": line, "official": official.get(k)})
        used.add(k)
    rows += [{"official": l} for k, l in official.items() if k not in used]
    return rows


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def ratio(ours, official, higher_is_better):
    if ours is None or official is None or ours == 0 or official == 0:
        return "–"
    r = ours / official if higher_is_better else official / ours
    return f"**{r:.2f}×**"


def step_table(rows):
    out = ["| model | crops | batch | out_dim | precision | threads | dinoscope (device) | dinoscope img/s | first step s | official img/s | ratio |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r.get("ours"), r.get("official")
        ref = a or b
        model = f"{ref['arch']}/{ref['patch']} depth {ref['depth']}"
        if ref.get("method", "dino") != "dino":
            model += f" ({ref['method']})"
        crops = f"2×{ref['global_size']} + {ref['local_crops']}×{ref['local_size']}"
        threads = ref.get("threads", "–")
        device = a["device"] if a else "–"
        out.append(f"| {model} | {crops} | {ref['batch']} | {ref['out_dim']} | {ref.get('precision', 'f32')} | "
                   f"{threads} | {device} | {fmt(a and a['img_per_sec'])} | {fmt(a and a.get('first_step_secs'))} | "
                   f"{fmt(b and b['img_per_sec'])} | {ratio(a and a['img_per_sec'], b and b['img_per_sec'], True)} |")
    return out


def data_table(rows):
    out = ["| crops | cores | dinoscope img/s per core | official img/s per core | ratio |",
           "|---|---|---|---|---|"]
    for r in rows:
        a, b = r.get("ours"), r.get("official")
        ref = a or b
        crops = f"2×{ref['global_size']} + {ref['local_crops']}×{ref['local_size']}"
        out.append(f"| {crops} | {ref['workers']} | {fmt(a and a['img_per_sec_per_core'])} | "
                   f"{fmt(b and b['img_per_sec_per_core'])} | "
                   f"{ratio(a and a['img_per_sec_per_core'], b and b['img_per_sec_per_core'], True)} |")
    return out


def viewer_table(rows):
    out = ["| model | input | threads | dinoscope median ms | official median ms | ratio (speed) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r.get("ours"), r.get("official")
        ref = a or b
        out.append(f"| {ref['arch']}/{ref['patch']} | {ref['image_size']} px | {ref.get('threads', '–')} | "
                   f"{fmt(a and a['median_ms'], 0)} | {fmt(b and b['median_ms'], 0)} | "
                   f"{ratio(a and a['median_ms'], b and b['median_ms'], False)} |")
    return out


def matmul_table(rows):
    """The step's products grouped by layer and pass (summed over the crop groups that run them):
    where the kernel library alone loses or wins, then all of them together."""
    def groups(line):
        """Layer and pass -> (FLOP, seconds, shapes) over the crops, as often as the step runs each."""
        out = {}
        for p in (line or {}).get("products", []):
            key = p["name"].rsplit(" (", 1)[0]
            flop = 2.0 * p["m"] * p["k"] * p["n"] * p.get("count", 1)
            f, t, shapes = out.get(key, (0.0, 0.0, []))
            out[key] = (f + flop, t + flop / (p["gflop_per_s"] * 1e9), shapes + [p])
        return out

    def rate(g):
        return g and g[0] / g[1] / 1e9

    out = ["| layer and pass | products (m × k × n) | transposed | dinoscope GFLOP/s | official GFLOP/s | ratio |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r.get("ours"), r.get("official")
        ref = a or b
        mine, theirs = groups(a), groups(b)
        for key, (_, _, shapes) in groups(ref).items():
            dims = ", ".join(f"{p['m']} × {p['k']} × {p['n']}" for p in shapes)
            if shapes[0].get("count", 1) > 1:
                dims += f" (each in all {shapes[0]['count']} blocks)"
            side = ["–", "left", "right"][shapes[0]["transposed"]]
            x, y = rate(mine.get(key)), rate(theirs.get(key))
            out.append(f"| {key} | {dims} | {side} | {fmt(x)} | {fmt(y)} | {ratio(x, y, True)} |")
        out.append(f"| **all of them** ({ref['arch']}/{ref['patch']}, batch {ref['batch']}, {ref.get('threads', '–')} threads) | | | "
                   f"{fmt(a and a['gflop_per_s'])} | {fmt(b and b['gflop_per_s'])} | "
                   f"{ratio(a and a['gflop_per_s'], b and b['gflop_per_s'], True)} |")
    return out


def first_steps(lines):
    """The first-step time of the step-cold and step-warm parts, from the step line each wrote
    before its status line (none when it was stopped at its budget)."""
    out, pending = [], None
    for line in lines:
        if line.get("mode") == "step" and line.get("impl") != "official":
            pending = line
        elif line.get("mode") == "status":
            if line["part"] in ("step-cold", "step-warm"):
                name = line["part"].removeprefix("step-")
                if line["status"] == "ok" and pending:
                    out.append(f"{name} first step {fmt(pending.get('first_step_secs'))} s")
                else:
                    out.append(f"{name} did not finish within {line['secs']} s ({line['status']})")
            pending = None
    return out


def render(lines, section):
    meta = next((l for l in lines if l.get("mode") == "meta"), {})
    rows = pair(lines)
    by_mode = {m: [r for r in rows if (r.get("ours") or r.get("official"))["mode"] == m] for m in KEYS}
    versions = f"; {meta['versions']}" if meta.get("versions") else ""
    text = [f"<!-- {section}:begin -->",
            f"Measured {meta.get('date', '?')} on {meta.get('machine', '?')}{versions}. Every pair ran "
            f"back to back in one run of `{meta.get('command', '?')}`; ratio > 1 means dinoscope is faster.", ""]
    titles = {"step": "DINO training step", "data": "Data pipeline (decode + multi-crop, real photos)",
              "viewer": "Viewer network (forward with the last block's attention)",
              "matmul": "Matrix products of the step, each on its own (`--mode matmul`; torch.mm on the same shapes and views)"}
    tables = {"step": step_table, "data": data_table, "viewer": viewer_table, "matmul": matmul_table}
    for m in KEYS:
        if by_mode[m]:
            text += [f"**{titles[m]}**", ""] + tables[m](by_mode[m]) + [""]
    for c in (l for l in lines if l.get("mode") == "autotune_cache"):
        text += [f"**Autotune cache** (`DINO_AUTOTUNE_CACHE`): the warm run loaded {c['loaded_entries']} tuned "
                 f"kernel choices ({c['cache_kib']} KiB on disk) that the cold run wrote; "
                 + "; ".join(first_steps(lines)) + ".", ""]
    demo = [l for l in lines if l.get("mode") == "demo"]
    for d in demo:
        text += [f"**Class demo** (`dino train` with the README's class-demo flags, `--device auto`): "
                 f"{d.get('steps')} steps at {fmt(d.get('img_per_sec'))} img/s; Jaccard of the best head "
                 f"{fmt(d.get('jaccard_start'), 3)} at step 0 → {fmt(d.get('jaccard_best_head'), 3)}.", ""]
    parts = [l for l in lines if l.get("mode") == "status"]
    if parts:
        bad = [f"{p['part']} ({p['status']})" for p in parts if p.get("status") != "ok"]
        text += [f"Parts: {len(parts) - len(bad)} of {len(parts)} finished within their budgets"
                 + (f"; not finished: {', '.join(bad)}." if bad else "."), ""]
    ours = [l for l in lines if l.get("impl") != "official" and l.get("mode") in KEYS]
    simd = sorted({l["simd"] for l in ours if l.get("simd")})
    if simd:
        text += ["dinoscope's CPU kernels had " + ", ".join(simd) + " (run-time detected).", ""]
    text.append(f"<!-- {section}:end -->")
    return "\n".join(text)


def write(path, section, block):
    try:
        doc = open(path).read()
    except FileNotFoundError:
        doc = "# Benchmarks\n"
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    p.add_argument("--section", default="cpu")
    p.add_argument("--write")
    a = p.parse_args()
    block = render(load(a.results), a.section)
    if a.write:
        write(a.write, a.section, block)
    else:
        print(block)


if __name__ == "__main__":
    main()
