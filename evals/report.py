"""The comparison report: Markdown, a self-contained HTML page (plots inlined as PNG) and JSON.

Sections: scores per suite and checkpoint; the alignment-tax table (each later checkpoint B
against the first, A: per suite A, B, delta and its paired 95% interval, and whether the
interval excludes zero); the reward-model win rate of B over A with ties; response statistics
and KL(B || A); routing drift per MoE layer (DeepSeekMoE checkpoints);
plots of per-suite scores, reward and length distributions; and side-by-side
samples where the checkpoints disagree most.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from evals.metrics import delta_interval, win_rate
from evals.suites import SuiteResult

HEADLINE = {"math": "accuracy", "code": "pass@1", "preference": "mean RM score", "safety": "safe behaviour",
            "stats": "response words", "reward": "your reward, mean"}


# the headline score is shown once: these metrics repeat it, the interval and count are in other columns
SHOWN = {"score", "score_low", "score_high", "items", "accuracy", "reward_mean", "response_words", "pass@1"}


def _short(name: str) -> str:
    return name.rstrip("/").split("/")[-2] + "/" + name.rstrip("/").split("/")[-1] if name.count("/") > 1 else name


def build(results: dict[str, dict[str, SuiteResult]], kl: dict[str, float] | None = None,
          drift: dict[str, list[float]] | None = None) -> dict:
    """The report's content as plain data (what report.json holds). drift: per pair, the routing
    agreement per MoE layer (evals/routing_drift.py)."""
    names = list(results)
    base = names[0]
    suites = [s for s in results[base] if all(s in results[n] for n in names)]
    out = {"checkpoints": names, "suites": suites, "scores": {}, "tax": [], "win_rates": [], "kl": kl or {},
           "routing_agreement": drift or {}, "disagreements": []}
    for n in names:
        out["scores"][n] = {s: {"score": results[n][s].score, **results[n][s].metrics} for s in suites}
    for other in names[1:]:
        for s in suites:
            a = [it["score"] for it in results[base][s].items]
            b = [it["score"] for it in results[other][s].items]
            if len(a) != len(b):
                continue
            delta, low, high = delta_interval(a, b)
            verdict = "gain" if low > 0 else "tax" if high < 0 else "no clear change"
            if s == "stats":
                verdict = "longer" if low > 0 else "shorter" if high < 0 else "no clear change"
            out["tax"].append({"suite": s, "a": base, "b": other, "score_a": results[base][s].score,
                               "score_b": results[other][s].score, "delta": delta, "low": low, "high": high,
                               "verdict": verdict})
            if s == "preference":
                out["win_rates"].append({"a": base, "b": other, **win_rate(a, b)})
            pairs = sorted(zip(results[base][s].items, results[other][s].items, strict=True),
                           key=lambda p: -abs(p[1]["score"] - p[0]["score"]))
            for ia, ib in pairs[:3]:
                if ia["score"] != ib["score"]:
                    out["disagreements"].append({"suite": s, "a": base, "b": other, "prompt": ia["prompt"],
                                                 "completion_a": ia["completions"][0], "score_a": ia["score"],
                                                 "completion_b": ib["completions"][0], "score_b": ib["score"]})
    return out


def plots(results: dict[str, dict[str, SuiteResult]], suites: list[str]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    images = {}

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    scored = [s for s in suites if s != "stats"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * max(len(scored), 1), 3.4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        xs = [j + i * width for j in range(len(scored))]
        vals = [results[n][s].score for s in scored]
        errs = [[v - results[n][s].metrics.get("score_low", v) for v, s in zip(vals, scored, strict=True)],
                [results[n][s].metrics.get("score_high", v) - v for v, s in zip(vals, scored, strict=True)]]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=_short(n))
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(scored))])
    ax.set_xticklabels([f"{s}\n({HEADLINE[s]})" for s in scored])
    ax.set_title("Score per suite (95% interval)")
    ax.legend(fontsize=8)
    images["scores"] = png(fig)

    dist_suite = "preference" if "preference" in suites else next((s for s in scored), None)
    if dist_suite:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for n in names:
            ax.hist([it["score"] for it in results[n][dist_suite].items], bins=20, alpha=0.5, label=_short(n))
        ax.set_title(f"{dist_suite}: per-item {'reward' if dist_suite == 'preference' else 'score'} distribution")
        ax.legend(fontsize=8)
        images["rewards"] = png(fig)
    length_suite = "stats" if "stats" in suites else None
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for n in names:
        items = results[n][length_suite].items if length_suite else [it for s in suites for it in results[n][s].items]
        ax.hist([len(it["completions"][0].split()) for it in items], bins=20, alpha=0.5, label=_short(n))
    ax.set_title("Response length (words)")
    ax.legend(fontsize=8)
    images["lengths"] = png(fig)
    return images


def _md_table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v).replace("|", "\\|").replace("\n", " ") for v in r) + " |" for r in rows]
    return "\n".join(lines)


def tables(content: dict) -> list[tuple[str, list[str], list[list]]]:
    names = content["checkpoints"]
    out = [("Scores", ["suite", "metric", *[_short(n) for n in names]],
            [[s, HEADLINE[s], *[content["scores"][n][s]["score"] for n in names]] for s in content["suites"]]
            + [[s, k, *[content["scores"][n][s][k] for n in names]] for s in content["suites"]
               for k in content["scores"][names[0]][s] if k not in SHOWN])]
    out.append(("Alignment tax (B against A, paired 95% interval)",
                ["suite", "A", "B", "score A", "score B", "delta", "interval", "verdict"],
                [[t["suite"], _short(t["a"]), _short(t["b"]), t["score_a"], t["score_b"], t["delta"],
                  f"[{t['low']:.3f}, {t['high']:.3f}]", t["verdict"]] for t in content["tax"]]))
    if content["win_rates"]:
        out.append(("Reward-model win rate of B over A", ["A", "B", "wins", "ties", "losses", "win rate", "interval"],
                    [[_short(w["a"]), _short(w["b"]), w["wins"], w["ties"], w["losses"], w["rate"],
                      f"[{w['low']:.3f}, {w['high']:.3f}]"] for w in content["win_rates"]]))
    if content["kl"]:
        out.append(("KL of B from A (per response, on B's samples)", ["pair", "KL(B || A)"],
                    [[pair, value] for pair, value in content["kl"].items()]))
    if content["routing_agreement"]:
        out.append(("Routing drift of B from A (share of response tokens with the same top-k experts)",
                    ["pair", "mean over MoE layers", "lowest layer", "per layer"],
                    [[pair, sum(v) / len(v), min(v), " ".join(f"{x:.2f}" for x in v)]
                     for pair, v in content["routing_agreement"].items()]))
    out.append(("Where they disagree most", ["suite", "prompt", "A", "score A", "B", "score B"],
                [[d["suite"], d["prompt"], d["completion_a"][:300], d["score_a"], d["completion_b"][:300], d["score_b"]]
                 for d in content["disagreements"]]))
    return out


def write(results: dict[str, dict[str, SuiteResult]], out_dir: str | Path, kl: dict[str, float] | None = None,
          drift: dict[str, list[float]] | None = None) -> dict:
    """report.md, report.html, report.json and the plots' PNGs in out_dir; returns the content."""
    from evals import routing_drift

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    content = build(results, kl, drift)
    images = plots(results, content["suites"])
    if drift:
        images["routing_drift"] = routing_drift.plot({" vs ".join(map(_short, p.split(" vs "))): v
                                                      for p, v in drift.items()})
    for name, data in images.items():
        (out_dir / f"{name}.png").write_bytes(data)
    md = ["# deepalign comparison", "", "Checkpoints: " + ", ".join(f"`{n}`" for n in content["checkpoints"]), ""]
    for title, header, rows in tables(content):
        md += [f"## {title}", "", _md_table(header, rows), ""]
    md += ["## Plots", ""] + [f"![{name}]({name}.png)" for name in images]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>deepalign comparison</title><style>",
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
            "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}"
            "th{background:#f3f3f3}td.gain{color:#1a7f37;font-weight:600}td.tax{color:#c62828;font-weight:600}"
            "img{max-width:100%;margin:0.5em 1em 0.5em 0}</style></head><body>",
            "<h1>deepalign comparison</h1><p>"
            + ", ".join(f"<code>{html.escape(n)}</code>" for n in content["checkpoints"])
            + "</p>"]
    for title, header, rows in tables(content):
        page.append(f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                    + "</tr>")
        for r in rows:
            cells = []
            for v in r:
                text = f"{v:.3f}" if isinstance(v, float) else str(v)
                cls = f" class='{text}'" if text in ("gain", "tax") else ""
                cells.append(f"<td{cls}>{html.escape(text)}</td>")
            page.append("<tr>" + "".join(cells) + "</tr>")
        page.append("</table>")
    page.append("<h2>Plots</h2>")
    for name, data in images.items():
        page.append(f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    page.append("</body></html>")
    (out_dir / "report.html").write_text("\n".join(page))
    (out_dir / "report.json").write_text(json.dumps(content, indent=2))
    return content
