"""The report's glossary of abbreviations: every short name a reader meets on the page (loss
names, plot scales, statistics), each explained once. `used(text)` picks the terms the page's
text actually contains, so the glossary lists exactly what the report uses.
"""

from __future__ import annotations

import re

from gsil_bench.reports import html as H

# term -> what it means (a loss's term is matched as a word inside method labels too: gsil-kliep -> kliep)
TERMS: dict[str, str] = {
    "base": "the starting model, before any training (evaluated once, as iteration 0)",
    "SFT": "supervised fine-tuning: maximise the log-likelihood of the demonstrations",
    "DPO": "direct preference optimisation (Rafailov et al. 2023): -log sigmoid(beta * (r_real - r_gen)), "
           "demonstration preferred over the model's own response",
    "hinge": "hinge loss: max(0, 1 - margin) (dpo-hinge: SLiC's; gsil-hinge: GSIL's convex hinge member)",
    "IPO": "identity preference optimisation (Azar et al. 2023): the squared distance of the margin from "
           "1/(2 beta), a regression instead of a sigmoid",
    "SPIN": "self-play fine-tuning (Chen et al. 2024): DPO's loss against the previous iteration's own "
            "generations, iteration after iteration",
    "GSIL": "generalized self-imitation learning (Xiao et al. 2024): a density-ratio classifier between the "
            "demonstrations and the model's own generations, one convex function per member",
    "logistic": "GSIL's logistic member: the classifier's log loss (-log sigmoid of the shifted, scaled log ratio)",
    "brier": "GSIL's Brier-score member: the squared error of the classifier's probability",
    "KLIEP": "Kullback-Leibler importance estimation procedure: GSIL's member fitting the density ratio by "
             "minimising a KL divergence",
    "LSIF": "least-squares importance fitting: GSIL's member fitting the density ratio by squared error",
    "r": "log ratio log pi(y|x) - log pi_ref(y|x) summed over the response (pi_ref: the iteration's "
         "starting model); r_real for the demonstration, r_gen for the model's own response",
    "beta*r": "the log ratio as DPO, IPO and SPIN log it, scaled by their beta (TRL's 'rewards')",
    "w_real": "-dL/dr_real: how hard a step raises the demonstration's log-likelihood",
    "w_gen": "dL/dr_gen: how hard a step lowers the model's own generation",
    "symlog": "symmetric-log axis: linear near 0 (within linthresh), logarithmic beyond, so curves of very "
              "different sizes (and signs) share one panel",
    "Holm": "Holm-Bonferroni correction: p-values adjusted for testing every method against the baseline "
            "(p (Holm) <= alpha controls the chance of any false 'better/worse')",
    "CI": "confidence interval (95% unless the report says otherwise), by bootstrap over items",
    "p": "p-value of the paired bootstrap test against the baseline (two-sided)",
    "nats": "natural-log units of log-probability (per token, or summed over a response)",
    "iter": "self-play iteration (each trains on the previous iteration's own generations)",
}

_WORD = r"(?<![A-Za-z0-9_]){}(?![A-Za-z0-9_])"


def used(text: str) -> list[tuple[str, str]]:
    """(term, meaning) for every glossary term the text contains (as a word; case-insensitive
    except the one-letter `r` and `p`, matched only as written)."""
    out = []
    for term, meaning in TERMS.items():
        flags = 0 if len(term) == 1 else re.IGNORECASE
        if re.search(_WORD.format(re.escape(term)), text, flags):
            out.append((term, meaning))
    return out


def glossary_markdown(text: str) -> str:
    rows = used(text)
    if not rows:
        return ""
    return "\n".join(["## Abbreviations", "", "| term | meaning |", "|---|---|"]
                     + [f"| {t} | {m} |" for t, m in rows] + [""])


def glossary_table_html(text: str) -> str:
    rows = "".join(f"<tr><td>{H.esc(t)}</td><td>{H.esc(m)}</td></tr>" for t, m in used(text))
    return (f'<table id="abbreviations" class="meta"><tr><th>term</th><th>meaning</th></tr>{rows}</table>'
            if rows else "")
