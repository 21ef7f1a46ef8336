"""Offline evaluation tasks for lm-eval, built from the *evaluation* split of the bundled text.

- ``mixviz_lastword`` — LAMBADA-style: predict a passage's last word (acc, perplexity).
- ``mixviz_nextsent`` — HellaSwag-style: the true next sentence among 4 (acc, acc_norm).
- ``mixviz_ppl`` — word perplexity of paragraphs (loglikelihood_rolling).

The items are built deterministically (seeded distractors) and written once, with their lm-eval
YAML, under ``cache/tasks/<hash>/``; :func:`task_manager` registers that folder with lm-eval.
Real lm-eval task names (``lambada_openai``, ``hellaswag`` …) pass straight through.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from functools import cache
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.text import evaluation_documents
from mixviz.paths import atomic_write_bytes, cache_dir

KLD_TASK = (
    "mixviz_kld"  # KL divergence to the unquantized model: mixviz.runs.evaluation.kld, not lm-eval
)
LM_EVAL_TASKS = ("mixviz_lastword", "mixviz_nextsent", "mixviz_ppl")
BUNDLED_TASKS = (*LM_EVAL_TASKS, KLD_TASK)
_BUILDER_VERSION = 3  # 2: no doubled space, no repeated paragraphs; 3: every sentence end
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")

_YAML = {
    "mixviz_lastword": """task: mixviz_lastword
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
""",
    "mixviz_nextsent": """task: mixviz_nextsent
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
""",
    "mixviz_ppl": """task: mixviz_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: {version}
""",
}


def prose_paragraphs() -> list[str]:
    """Paragraphs of English prose from the evaluation documents (no code, no grammar), each
    once: pydoc repeats some paragraphs across topics, and a repeated item would count twice."""
    out: list[str] = []
    for doc in evaluation_documents():
        for para in doc.split("\n\n"):
            if not para or para[0].isspace() or "::=" in para or ">>>" in para:
                continue
            text = " ".join(para.split())
            words = text.split()
            letters = sum(ch.isalpha() or ch.isspace() for ch in text) / max(len(text), 1)
            if len(words) >= 15 and letters > 0.85 and not text.startswith(("*", "-", "=")):
                if text not in out:
                    out.append(text)
    return out


def _sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(paragraph) if len(s.split()) >= 4]


def lastword_items() -> list[dict]:
    """Every sentence end of a paragraph with at least 20 words before it: the context is the
    paragraph up to there, the target the sentence's last word (several items per paragraph,
    each a different word to predict).

    >>> lastword_items()[0]["target"].isalpha()
    True
    """
    items = []
    for para in prose_paragraphs():
        context: list[str] = []
        for s in _sentences(para):
            context.append(s)
            words = " ".join(context).split()
            last = words[-1].rstrip(".!?\"')")
            if len(words) >= 20 and last.isalpha() and len(last) >= 3:
                items.append({"context": " ".join(words[:-1]), "target": last})
    return items


def nextsent_items(seed: int = 1234) -> list[dict]:
    """A sentence, then its true successor among three successors drawn from other paragraphs."""
    rng = random.Random(seed)
    paras = [_sentences(p) for p in prose_paragraphs()]
    pool = [(i, s) for i, sents in enumerate(paras) for s in sents[1:]]
    items = []
    for i, sents in enumerate(paras):
        for a, b in zip(sents, sents[1:], strict=False):
            if len(b.split()) < 5:
                continue
            wrong = []
            while len(wrong) < 3:
                j, s = pool[rng.randrange(len(pool))]
                if j != i and s != b and s not in wrong:
                    wrong.append(s)
            label = rng.randrange(4)
            choices = wrong[:label] + [b] + wrong[label:]
            # lm-eval puts its target delimiter (" ") between context and choice
            items.append({"context": a, "choices": choices, "label": label})
    return items


def ppl_items() -> list[dict]:
    return [{"text": p} for p in prose_paragraphs()]


@cache
def _content() -> dict[str, list[dict]]:
    return {
        "mixviz_lastword": lastword_items(),
        "mixviz_nextsent": nextsent_items(),
        "mixviz_ppl": ppl_items(),
    }


def tasks_dir() -> Path:
    """The folder holding the bundled tasks' YAML and data, written on first use."""
    content = _content()
    digest = hashlib.sha256(json.dumps([_BUILDER_VERSION, content], sort_keys=True).encode())
    folder = cache_dir() / "tasks" / digest.hexdigest()[:12]
    if (folder / "done").is_file():
        return folder
    for name, items in content.items():
        data = folder / f"{name}.jsonl"
        atomic_write_bytes(data, "".join(json.dumps(x) + "\n" for x in items).encode())
        yaml = _YAML[name].format(data=json.dumps(str(data)), version=_BUILDER_VERSION)
        atomic_write_bytes(folder / f"{name}.yaml", yaml.encode())
    atomic_write_bytes(folder / "done", b"")
    return folder


def task_manager(names: list[str] | tuple[str, ...] | None = None):
    """An lm-eval TaskManager that knows the bundled tasks besides its own.

    Indexing lm-eval's thousands of built-in tasks takes seconds, so when only bundled tasks
    are named the built-in index is skipped.
    """
    from lm_eval.tasks import TaskManager

    only_bundled = names is not None and all(n in BUNDLED_TASKS for n in names)
    return TaskManager(include_path=str(tasks_dir()), include_defaults=not only_bundled)


def check_tasks(names: list[str], manager=None) -> list[str]:
    """Validate task names against lm-eval's registry (with the bundled ones) → clean list."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise MixvizError("no tasks given (e.g. --tasks mixviz_lastword,mixviz_nextsent)")
    if all(n in BUNDLED_TASKS for n in names):
        return names
    manager = manager or task_manager(names)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise MixvizError(
            f"unknown lm-eval task {unknown[0]!r}; bundled offline tasks: "
            f"{', '.join(BUNDLED_TASKS)}"
        )
    return names
