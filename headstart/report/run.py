"""The report of one run: what was trained on what, how, how well, and where it goes wrong, as one HTML page.

Every section reads the run's own files (:class:`~headstart.data.rundir.RunDir`); a file that is missing (a run
without a test split, a run from before calibration, an adapted run without training records) turns its section
into a sentence saying so, never into an error. Only the top losses need the model: the run predicts its own
held-out images.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from datetime import datetime
from pathlib import Path

from PIL import Image

import headstart
from headstart.core.errors import HeadstartError
from headstart.data.balance import SKEW_HINT, skew
from headstart.data.rundir import RunDir
from headstart.predict import open_predictor
from headstart.report import figures, label_issues
from headstart.report.html import (
    bar,
    callout,
    card,
    cards,
    details,
    duration,
    esc,
    figure,
    img,
    kv,
    num,
    page,
    para,
    pct,
    table,
)
from headstart.report.top_losses import held_out_predictions

TABLE_CLASSES = 40  # above this many classes the confusion matrix is a picture, not a table
LIST_FILES = 50  # skipped or left-out files named in the page


class RunReport:
    """Gathers a run's files once, then renders each section."""

    def __init__(self, run_dir: str | Path, top_losses: int = 24, max_images: int = 2000, device: str = "auto",
                 loaded=None, heatmaps: bool = True):
        self.run = RunDir(run_dir)
        self.config = self.run.config()
        self.summary = self.run.summary()
        self.records = self.run.metrics() if self.run.has(self.run.METRICS) else []
        self.test = self.run.read_json(self.run.TEST_METRICS)
        self.evaluation = self.run.read_json(self.run.EVALUATION)
        self.adapted = self.run.read_json(self.run.ADAPT) or self.config.get("adapted")
        self.leakage = self.run.read_json(self.run.LEAKAGE, {})
        self.skipped = self.run.skipped()
        self.top_losses, self.max_images, self.device, self.loaded = top_losses, max_images, device, loaded
        self.heatmaps = heatmaps
        try:
            self.splits = self.run.split()
        except HeadstartError:
            self.splits = None
        self.classes = self.splits.classes if self.splits else self.config.get("classes", [])

    # -- the page ------------------------------------------------------------------------------------------------

    def html(self) -> str:
        sections = [s for s in (self.adaptation(), self.data(), self.training_setup(), self.training(),
                                self.results(), self.evaluation_section(), self.calibration(), self.errors(),
                                self.labels())
                    if s is not None]
        model = self.config.get("model", "?")
        strategy = self.summary.get("strategy") or self.config.get("strategy_resolved") or self.config.get("strategy")
        title = f"{self.run.path.name}: {model}" + (f", {strategy}" if strategy and not self.adapted else
                                                    ", adapted" if self.adapted else "")
        finished = self.run / (self.run.SUMMARY if self.run.has(self.run.SUMMARY) else self.run.CONFIG)
        subtitle = (f"headstart run <code>{esc(self.run.path.resolve())}</code> · data <code>"
                    f"{esc(self.config.get('data', '?'))}</code> · "
                    f"{datetime.fromtimestamp(finished.stat().st_mtime):%Y-%m-%d %H:%M}")
        footer = (f"Made by headstart {esc(headstart.__version__)} (<code>headstart report</code>) "
                  "from the run's own files: config.yaml, split.json, metrics.jsonl, summary.json, test_metrics.json"
                  f"{', evaluation.json' if self.evaluation else ''}. Self-contained: it opens offline.")
        return page(title, subtitle, sections, lead=self.lead(), footer=footer)

    def lead(self) -> str:
        items = []
        val = (f"validation {pct(self.summary['val_acc'])} on {self.summary.get('val_images', '?')} images"
               if "val_acc" in self.summary else "")
        if self.test:
            items.append(card("test accuracy", pct(self.test["accuracy"]),
                              f"{self.test['num_images']:,} images · balanced {pct(self.test['balanced_accuracy'])}"
                              + (f"<br>{val}" if val else ""), lead=True))
        if self.evaluation:
            items.append(card("accuracy (evaluate)", pct(self.evaluation["accuracy"]),
                              f"{self.evaluation['num_images']:,} images of "
                              f"{esc(Path(self.evaluation.get('data', '?')).name)} · balanced "
                              f"{pct(self.evaluation['balanced_accuracy'])}", lead=not items))
        if not items and val:
            items.append(card("validation accuracy", pct(self.summary["val_acc"]),
                              f"{self.summary.get('val_images', '?')} images; no test split", lead=True))
        strategy = self.summary.get("strategy") or self.config.get("strategy_resolved")
        if strategy:
            how = "chosen by auto" if self.config.get("strategy_choice") else "as asked"
            items.append(card("strategy", esc(strategy), f"{how} · shipped phase "
                              f"{esc(self.summary.get('best_phase', '?'))}", small=True))
        image_size = (self.config.get("preprocessing") or {}).get("image_size")
        items.append(card("model", esc(self.config.get("model", "?")),
                          f"{image_size} px · {esc(_weights_kind(self.config.get('weights_source')))}", small=True))
        if self.splits:
            items.append(card("data", f"{len(self.classes)} classes",
                              f"{len(self.splits.train):,} train · {len(self.splits.val):,} val · "
                              f"{len(self.splits.test):,} test", small=True))
        if "seconds" in self.summary:
            items.append(card("time", duration(self.summary["seconds"]), esc(self.config.get("runtime", "")),
                              small=True))
        rows = {key: (title, c) for key, _, title, c in self.calibration_rows()}
        # After a refit the validation figures describe a head that is not shipped.
        key = next((k for k in ("test", "cross_fitted", "val") if k in rows
                    and not (k == "val" and self.summary.get("refit"))), None)
        if key:
            title, cal = rows[key]
            items.append(card("calibration error", num(cal["ece_after"]),
                              f"ECE, {esc(title)} · T = {cal.get('temperature', 1.0):.2f}", small=True))
        return cards(items) + self.headline()

    def headline(self) -> str:
        """One sentence: what was trained on what, and what shipped."""
        if self.adapted:
            return para(f"A copy of <code>{esc(self.adapted.get('from_run', '?'))}</code> whose BatchNorm statistics "
                        f"were adapted to {self.adapted.get('images', '?')} images of "
                        f"<code>{esc(self.adapted.get('target', '?'))}</code>.")
        s = self.summary
        if not s:
            return para("This run has no summary.json: its training did not finish (or is still running); the "
                        "sections below show what it has recorded so far.", "note")
        text = (f"Trained <b>{esc(s.get('model'))}</b> with <b>{esc(s.get('strategy'))}</b> on "
                f"{s.get('train_images', '?'):,} training images of {len(self.classes)} classes; validation loss "
                f"(after temperature scaling) chose phase <b>{esc(s.get('best_phase'))}</b>, epoch "
                f"{s.get('best_epoch')}.")
        if raw := sum(bool(r.get("val_all_correct")) for r in self.records):
            text += (f" {raw} epoch(s) had every validation image right: no temperature can be fitted there, so "
                     "they were ranked on their raw validation loss (T = 1).")
        if s.get("refit"):
            text += (f" The {esc(s['refit'].get('head', ''))} head was then refitted on all "
                     f"{s['refit'].get('refit_images', '?'):,} train and validation images.")
        return para(text)

    # -- sections ------------------------------------------------------------------------------------------------

    def adaptation(self):
        if not self.adapted:
            return None
        return "adaptation", "Adaptation", adaptation_body(self.adapted)

    def data(self):
        if not self.splits:
            return "data", "Data", para("This run has no split.json, so which images it used is not recorded.",
                                        "note")
        sp = self.splits
        counts = {name: Counter(y for _, y in getattr(sp, name)) for name in ("train", "val", "test")}
        top = max(counts["train"].values(), default=1)
        rows = [[esc(c), bar(counts["train"][i] / top, f"{counts['train'][i]:,}"), f"{counts['val'][i]:,}",
                 f"{counts['test'][i]:,}" if sp.test else "—"] for i, c in enumerate(sp.classes)]
        rows.append(["<b>all</b>", f"<b>{len(sp.train):,}</b>", f"<b>{len(sp.val):,}</b>",
                     f"<b>{len(sp.test):,}</b>" if sp.test else "—"])
        intro = (f"<code>{esc(self.config.get('data', '?'))}</code>: {esc(sp.layout or 'layout not recorded')}. "
                 f"{len(sp.classes)} classes; {len(sp.train):,} training, {len(sp.val):,} validation and "
                 f"{len(sp.test):,} test images.")
        body = para(intro)
        if not sp.test:
            body += callout("No test split: the figures below are validation figures, and validation also chose "
                            "the epoch and the calibration, so they flatter the model. Keep a <code>test/</code> "
                            "folder aside, or score the run on other labelled images with <code>headstart "
                            "evaluate</code>.", info=True)
        ratio = skew([y for _, y in sp.train], len(sp.classes))
        balance = self.config.get("balance", "none")
        if ratio > SKEW_HINT:
            body += callout(f"The classes are imbalanced: the largest has {ratio:.1f}× the training images of the "
                            "smallest. " + (f"The run balanced them ({esc(balance)})." if balance != "none" else
                                            "The run did not balance them; accuracy favours the large classes, "
                                            "so read the balanced accuracy and the per-class recall."))
        else:
            body += para(f"Class balance: the largest class has {ratio:.1f}× the training images of the smallest.",
                         "note")
        body += table(["class", "train", "val", "test"], rows)
        body += self.left_out()
        return "data", "Data", body

    def left_out(self) -> str:
        parts = []
        if self.skipped:
            reasons = Counter(_reason_kind(r) for _, r in self.skipped)
            parts.append(para(f"<b>{len(self.skipped)} file(s) left out</b> because they could not be used ("
                              + ", ".join(f"{n} {esc(k)}" for k, n in reasons.most_common()) + ")."))
            parts.append(details(f"the {min(len(self.skipped), LIST_FILES)} files",
                                 table(["file", "reason"], [[f"<code>{esc(p)}</code>", esc(r)]
                                                            for p, r in self.skipped[:LIST_FILES]], left=2)))
        else:
            parts.append(para("Every image could be read.", "note"))
        lk = self.leakage
        excluded = lk.get("excluded") or {}
        n_excluded = sum(len(v) for v in excluded.values())
        if lk.get("duplicate_groups"):
            text = (f"<b>{lk['duplicate_groups']} group(s) of duplicate images</b> (exact or near copies) were found. ")
            if lk.get("regrouped"):
                text += "Each group was kept on one side of the train/validation split. "
            if n_excluded:
                text += (f"{n_excluded} validation/test image(s) copying a training image were "
                         + ("kept, as asked: the held-out figures are inflated by them." if lk.get("kept") else
                            "left out of selection and scoring."))
            if conflicts := lk.get("label_conflicts"):
                text += (f" {len(conflicts)} of them carry a different label from the image they copy (label "
                         "conflicts: one of each pair's labels is wrong; `headstart check` lists them).")
            if after := (lk.get("excluded_after_refit") or {}).get("test"):
                text += (f" {len(after)} test image(s) copying a validation image were left out too, because the "
                         "refit fitted the shipped head on the validation images.")
            parts.append(para(text))
            if n_excluded:
                rows = [[esc(split), f"<code>{esc(p)}</code>"] for split, ps in excluded.items() for p in ps]
                parts.append(details(f"the {min(len(rows), LIST_FILES)} left-out images",
                                     table(["split", "file"], rows[:LIST_FILES], left=2)))
        elif lk:
            parts.append(para("No duplicate images were found between or within the splits.", "note"))
        return "<h3>Files left out</h3>" + "".join(parts)

    def _backbone_candidates(self) -> str:
        return backbone_candidates(self.run.read_json(RunDir.BACKBONE_CHOICE))

    def training_setup(self):
        c, s = self.config, self.summary
        pairs = [("model", f"<code>{esc(c.get('model', '?'))}</code>"),
                 ("pretrained weights", f"<code>{esc(c.get('weights_source', 'not recorded'))}</code>")]
        pre = c.get("preprocessing") or {}
        if pre:
            pairs.append(("preprocessing", esc(f"{pre.get('image_size')} px, {pre.get('interpolation')} resize, "
                                               f"crop {pre.get('crop_pct')}, mean {pre.get('mean')}, "
                                               f"std {pre.get('std')}")))
        strategy = s.get("strategy") or c.get("strategy_resolved")
        if strategy:  # the description as the run recorded it (runs before it was recorded show the name only)
            described = f": {esc(c['strategy_description'])}" if c.get("strategy_description") else ""
            pairs.append(("strategy", f"<b>{esc(strategy)}</b>{described}"))
        choice, budget = c.get("strategy_choice"), c.get("budget_plan")
        if budget:
            spent = (s.get("budget") or {}).get("spent_s")
            pairs.append(("why", f"<code>--budget {duration(budget['budget_s'])}</code> planned it: "
                                 f"{esc(budget.get('reason', ''))}"))
            spent = duration(spent) if spent is not None else f"{duration(s.get('seconds'))} before this page"
            pairs.append(("budget", esc(f"{duration(budget['budget_s'])}; spent {spent}; "
                                        f"{(s.get('budget') or {}).get('shipped', '')}")))
        elif choice:
            pairs.append(("why", f"<code>--strategy auto</code> chose it: {esc(choice.get('reason', ''))}"))
        elif c.get("strategy") and c.get("strategy") != "auto":
            pairs.append(("why", "asked for by name"))
        recipe = [f"{k.replace('_', ' ')} {c[k]}" for k in ("augment", "balance", "head", "bn", "label_smoothing",
                                                            "mixup", "cutmix", "l2sp", "lr_decay")
                  if c.get(k) not in (None, 0, 0.0, "none", False)]
        if recipe:
            pairs.append(("options", esc(", ".join(recipe))))
        pairs += [("batch size", esc(c.get("batch_size", "?"))),
                  ("ran on", esc(f"{c.get('runtime', '?')}" + (f" × {c['world_size']} processes"
                                                              if (c.get("world_size") or 1) > 1 else ""))),
                  ("time", esc(duration(s.get("seconds")))),
                  ("selection", esc(s.get("selection", "—")))]
        if c.get("backbone_choice"):
            bc = c["backbone_choice"]
            pairs.insert(1, ("backbone chosen", esc(f"--choose {bc.get('preset')}: {bc.get('reason')}")))
        body = kv(pairs) + self._backbone_candidates()
        phases = c.get("strategy_phases") or []
        if phases:
            figs = s.get("phases") or {}
            run = Counter(r["phase"] for r in self.records)
            rows = []
            for p in phases:
                f = figs.get(p["name"], {})
                shipped = " ★" if p["name"] == s.get("best_phase") else ""
                backbone = (f"decay {p['lr_decay']:g}/group" if p.get("lr_decay") else
                            f"×{p.get('backbone_lr_scale'):g}")
                how = ("head fitted on frozen features" if p.get("fit") == "features" else
                       f"{_trains(p.get('train_from'))}; lr {p.get('lr'):g}, backbone {backbone}; "
                       f"BatchNorm {p.get('bn')}")
                rows.append([f"<b>{esc(p['name'])}</b>{shipped}", esc(how),
                             f"{run.get(p['name'], 0)} / {p.get('epochs')}", num(f.get("val_loss_calibrated")),
                             pct(f.get("val_acc")), num(f.get("trainable_params"))])
            body += "<h3>Phases</h3>" + table(["phase", "what trains", "epochs run / max", "best val loss (cal.)",
                                               "val acc", "trainable params"], rows, left=2)
            body += para("★ the phase whose weights ship: the lowest validation loss after temperature scaling.",
                         "note")
        body += details("every setting (config.yaml)", kv([(k, f"<code>{esc(v)}</code>") for k, v in c.items()
                                                           if k not in ("classes", "strategy_phases")]))
        return "setup", "Model and strategy", body

    def training(self):
        if not self.records:
            return "training", "Training", para("No metrics.jsonl: this run has no record of its epochs"
                                                + (" (an adapted run is not trained)." if self.adapted else "."),
                                                "note")
        best = self.summary.get("best_epoch")
        body = ""
        if any("train_loss" in r for r in self.records):
            curves = figures.kept(self.run / RunDir.CURVES, [self.run / RunDir.METRICS, self.run / RunDir.SUMMARY],
                                  figures.training_curves, self.records, best)
            body += figure(curves,
                           "training curves: loss, accuracy and learning rate by epoch",
                           "Phases are shaded and named; the dashed green line is the epoch whose weights ship. A "
                           "head fitted on features is one point (validation only). Learning rates are each layer "
                           "group's at the end of the epoch" + ("." if any("lrs" in r for r in self.records) else
                                                                ": the head's (the record has no per-group rates)."),
                           width=figures.css_width(curves))
        else:
            r = self.records[-1]
            body += para(f"The head was fitted in one step on frozen features, so there are no curves: validation "
                         f"loss {num(r.get('val_loss'))} ({num(r.get('val_loss_calibrated'))} after temperature "
                         f"scaling), accuracy {pct(r.get('val_acc'))}"
                         + (f", regularisation C = {r['C']:g}" if isinstance(r.get("C"), (int, float)) else "")
                         + (f"; {r['features_computed']} images' features computed, {r['features_cached']} read "
                            "from the cache" if "features_computed" in r else "") + ".")
        cols = [("train_loss", num), ("train_acc", pct), ("val_loss", num), ("val_loss_calibrated", num),
                ("val_acc", pct), ("lr", lambda v: "—" if v is None else f"{v:.2e}"), ("seconds", duration)]
        rows = [[esc(r["phase"]) + (" ★" if r["global_epoch"] == best else ""), str(r.get("epoch")),
                 str(r["global_epoch"])] + [fmt(r.get(k)) for k, fmt in cols] for r in self.records]
        body += details(f"every epoch ({len(self.records)})",
                        table(["phase", "epoch", "overall", "train loss", "train acc", "val loss", "val loss (cal.)",
                               "val acc", "lr", "time"], rows))
        return "training", "Training", body

    def results(self):
        if not self.test:
            why = ("no test split" if self.splits and not self.splits.test else "no test_metrics.json")
            return "results", "Test results", para(
                f"This run has {why}. " + ("The evaluation section below scores it on other labelled images."
                                           if self.evaluation else "Score it on labelled images it has not seen with "
                                           "<code>headstart evaluate RUN DATA</code>; this page shows the result "
                                           "when it is made again."), "note")
        intro = (f"The shipped model on the run's {self.test['num_images']:,} test images, never used for training or "
                 f"selection: accuracy <b>{pct(self.test['accuracy'])}</b>, balanced accuracy (the mean recall over "
                 f"classes) <b>{pct(self.test['balanced_accuracy'])}</b>.")
        return "results", "Test results", para(intro) + metrics_block(self.test)

    def evaluation_section(self):
        e = self.evaluation
        if not e:
            return None
        tta = " with test-time augmentation" if e.get("tta") else ""
        notes = [(f"{e['num_images']:,} images of <code>{esc(e.get('data', '?'))}</code> scored by <code>headstart "
                  f"evaluate</code>{tta}: accuracy <b>{pct(e['accuracy'])}</b>, balanced "
                  f"<b>{pct(e['balanced_accuracy'])}</b>.")]
        if e.get("skipped"):
            notes.append(f"{len(e['skipped'])} unreadable file(s) left out.")
        if e.get("leaked_excluded"):
            notes.append(f"{e['leaked_excluded']} image(s) that copy a training image were left out.")
        elif e.get("leaked_kept"):
            notes.append(f"{e['leaked_kept']} image(s) that copy a training image were kept: they inflate the score.")
        return "evaluation", "Evaluation", para(" ".join(notes)) + metrics_block(e)

    def calibration_rows(self) -> list[tuple[str, str, str, dict]]:
        """``(key, row label, short title, calibration)`` for each set of calibration figures, in the order the
        weights came to be; label and title say which images and which weights the figures describe."""
        cal = self.summary.get("calibration") or {}
        before = "the head before the refit" if self.summary.get("refit") else "the shipped weights"
        rows = [("val", f"validation images, {before}", f"validation, {before.removeprefix('the ')}", cal.get("val")),
                ("cross_fitted", "train + validation images out of fold, heads fitted as the shipped one (where the "
                 "shipped T was fitted)", "cross-fitted, shipped settings", cal.get("cross_fitted")),
                ("test", "test images, the shipped weights", "test, shipped weights", cal.get("test")),
                ("evaluate", "evaluate's images, the shipped weights", "evaluate, shipped weights",
                 (self.evaluation or {}).get("calibration"))]
        return [row for row in rows if row[-1] and "ece_after" in row[-1]]

    def calibration(self):
        panels = self.calibration_rows()
        if not panels:
            return "calibration", "Calibration", para(
                "This run records no calibration (runs from before headstart fitted a temperature): its scores are "
                "the raw softmax.", "note")
        shipped_t = self.summary.get("temperature")
        source = self.summary.get("temperature_source")
        body = para("Scores are <code>softmax(logits / T)</code> with one temperature T, so that a score of 0.8 is "
                    "right about 80% of the time. The expected calibration error (ECE) is the average gap between "
                    "confidence and accuracy, weighted by the images in each bin; lower is better. Each row says "
                    "which images and which weights it describes, and its T column the temperature its "
                    "\"with T\" figures use.")
        if isinstance(shipped_t, (int, float)):
            body += para(f"Shipped: T = {shipped_t:.3g}" + (f", {esc(source)}." if source else "."))
        if self.summary.get("refit"):
            if self.summary.get("calibration", {}).get("cross_fitted"):
                body += callout("The head was refitted on train + validation images after validation chose its "
                                "settings, so validation can no longer calibrate it: the validation row describes the "
                                "head before the refit, and the shipped temperature is cross-fitted (each image "
                                "scored by a head fitted as the shipped one without it).", info=True)
            else:
                body += callout("The head was refitted on train + validation images after calibration; the "
                                "validation row describes the head before the refit, the test row the shipped one.",
                                info=True)
        rows = [[esc(label), f"{c.get('images', '?'):,}" if isinstance(c.get("images"), int) else "?",
                 f"{c.get('temperature', 1.0):.3g}", num(c.get("ece_before")),
                 num(c.get("ece_after")), num(c.get("nll_before")), num(c.get("nll_after"))]
                for _, label, _, c in panels]
        body += table(["images, weights", "count", "T", "ECE raw", "ECE with T", "NLL raw", "NLL with T"], rows)
        drawn = [(title, c) for _, _, title, c in panels if c.get("reliability_after")]
        if drawn:
            sources = [self.run / name for name in (RunDir.SUMMARY, RunDir.TEST_METRICS, RunDir.EVALUATION)]
            diagrams = figures.kept(self.run / RunDir.RELIABILITY, sources, figures.reliability_diagrams, drawn)
            body += figure(diagrams, "reliability diagrams",
                           "Each point is one bin of top-1 confidence: its mean confidence against its accuracy; its "
                           "area is the bin's share of the images. On the dashed diagonal a score means what it says.",
                           width=figures.css_width(diagrams))
        return "calibration", "Calibration", body

    def errors(self):
        title = "Top losses"
        if self.top_losses <= 0:
            return None
        try:
            # Opened once, for the predictions and the heat maps.
            self.loaded = self.loaded if self.loaded is not None else open_predictor(self.run.path, self.device)
            held = held_out_predictions(str(self.run.path), self.max_images, self.device, loaded=self.loaded)
        except HeadstartError as exc:
            return "top-losses", title, para(f"The model could not predict its held-out images: {esc(exc)}", "note")
        if not held.predictions:
            why = (f"none of its {len(held.unreadable)} held-out images could be read (moved or deleted since "
                   "training?)" if held.unreadable else "it has no validation or test images")
            return "top-losses", title, para(f"No predictions to rank: {why}.", "note")
        shown, wrong = held.top_losses(self.top_losses)
        by_split = Counter(p.split for p in held.predictions)
        n_wrong = sum(p.wrong for p in held.predictions)
        scope = " and ".join(f"{by_split[s]:,} {'validation' if s == 'val' else 'test'}" for s in ("test", "val")
                             if by_split[s])
        capped = sum(held.available.values()) > self.max_images
        text = (f"The model predicted {scope} images{f' (at most {self.max_images:,}: test first)' if capped else ''}"
                f" and got {n_wrong:,} wrong. ")
        text += ("Shown: the most confidently wrong, highest loss (−log of the score given to the true class) first. "
                 "They are where to look for mislabelled files, classes that overlap, and pictures unlike the "
                 "training images." if wrong else "None is wrong; shown instead: the right answers it was least "
                 "sure of.")
        body = para(text)
        if by_split["val"] and self.summary.get("refit"):
            body += para("The head was refitted on the validation images, so their losses are optimistic.", "note")
        if self.adapted:
            body += para("These are the source run's held-out images (its own domain), predicted by the adapted "
                         "model; the target images have no labels here.", "note")
        if held.unreadable:
            body += para(f"{len(held.unreadable)} image(s) could not be read now (moved or deleted since training).",
                         "note")
        cams, why = self._heatmaps(shown) if self.heatmaps else ([None] * len(shown), "")
        tiles = [_tile(p, cam) for p, cam in zip(shown, cams)]
        with_cams = any(cam is not None for cam in cams)
        body += f'<div class="thumbs{" cams" if with_cams else ""}">{"".join(tiles)}</div>'
        body += para("Under each image: the true class and the score the model gave it, then its prediction and "
                     "that score (calibrated probabilities)." + (" Beside it, what the network saw with its Grad-CAM "
                     "heat map for the predicted class: red where the evidence for that class lies." if with_cams
                     else ""), "note")
        if why:
            body += para(f"No heat maps: {esc(why)}", "note")
        return "top-losses", title, body

    def _heatmaps(self, shown) -> tuple[list, str]:
        """The Grad-CAM overlay of each shown image for its predicted class (None where there is none), through
        the run's torch network; and why there are none when it cannot be loaded or explained. Each overlay is
        kept in ``RUN/heatmaps/`` under a key of the image (path, size, mtime), the class and the weights file's
        mtime, so a page drawn again with the same top losses (``evaluate`` on a cached run) loads no torch."""
        kept = [self.run.path / RunDir.HEATMAPS / f"{self._heatmap_key(p)}.png" for p in shown]
        if kept and all(k.exists() for k in kept):
            return [Image.open(k) for k in kept], ""
        from headstart.explain import heatmap_images, torch_run  # torch and captum: only when heat maps are drawn

        try:
            run = torch_run(self.loaded)
            index = {c: i for i, c in enumerate(run.classes)}
            pictures = heatmap_images(run, [p.path for p in shown], [index.get(p.predicted, 0) for p in shown])
        except (HeadstartError, RuntimeError) as exc:  # the page is still worth having without them
            return [None] * len(shown), str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        pictures = [None if isinstance(picture, str) else picture for picture in pictures]
        try:
            kept[0].parent.mkdir(exist_ok=True)
            for picture, path in zip(pictures, kept):
                if picture is not None:
                    picture.save(path)
        except (OSError, IndexError):  # a read-only run: drawn again next time
            pass
        return pictures, ""

    def _heatmap_key(self, p) -> str:
        try:
            st, weights = os.stat(p.path), (self.run.path / RunDir.BEST).stat().st_mtime_ns
        except OSError:
            return "missing"
        text = f"{p.path}|{st.st_size}|{st.st_mtime_ns}|{p.predicted}|{weights}"
        return hashlib.sha1(text.encode()).hexdigest()[:20]

    def labels(self):
        """``check --labels --run`` wrote ``label_issues.csv`` here: its thumbnails."""
        return label_issues.run_section(self.run)


def _tile(p, cam) -> str:
    """One top loss: its thumbnail (and its heat map beside it), the true class and the prediction."""
    try:
        data, mime = figures.thumbnail(p.path)
        picture = img(data, f"{p.true} predicted as {p.predicted}", mime)
    except (HeadstartError, OSError, ValueError) as exc:
        picture = f'<div class="note">cannot show: {esc(exc)}</div>'
    if cam is not None:
        data, mime = figures.picture_bytes(cam)
        picture = f'<div class="pair">{picture}{img(data, f"Grad-CAM for {p.predicted}", mime)}</div>'
    verdict = (f'<div>predicted <span class="pred">{esc(p.predicted)}</span> {p.score:.2f}</div>'
               if p.wrong else f"<div>predicted {esc(p.predicted)} {p.score:.2f}</div>")
    return (f'<div class="thumb">{picture}<div>true <span class="true">{esc(p.true)}</span> {p.p_true:.2f}</div>'
            f'{verdict}<div class="path">{esc(p.split)} · {esc(Path(p.path).name)}</div></div>')


def adaptation_body(a: dict) -> str:
    """What ``headstart adapt`` did to a run (its ``adapted`` record), and what that means for the page."""
    pairs = [("adapted from", f"<code>{esc(a.get('from_run', '?'))}</code>"),
             ("target images", (f"<code>{esc(a.get('target', '?'))}</code> ({a.get('images', '?')} images, "
                                f"{a.get('unreadable', 0)} unreadable)")),
             ("method", esc(f"{a.get('method', '?')}: {a.get('reference', '')}")),
             ("BatchNorm layers", esc(a.get("batchnorm_layers", "?")))]
    if a.get("source"):
        pairs.append(("source statistics", esc(a["source"])))
    body = kv(pairs)
    if a.get("warning"):
        body += callout(esc(a["warning"]))
    return body + para("An adapted run keeps the source run's record of its training images, but was not trained "
                       "itself: it has no training curves, and its test figures are those of a <code>headstart "
                       "evaluate</code> on labelled target images, when one has been run.", "note")


def backbone_candidates(choice: dict | None) -> str:
    """The table of every candidate ``--choose`` looked at (a run's ``backbone_choice.json``), or nothing; a
    multi-label choice shows mAP where a single-label one shows accuracy, and each candidate's validation loss."""
    if not choice:
        return ""
    winner, multilabel = choice.get("winner", {}), choice.get("task") == "multilabel"
    keys = ("cv_map", "cv_loss", "val_map", "val_loss") if multilabel else ("cv_acc", "cv_loss", "val_acc")
    rows = [[esc(f"{r['backbone']} @ {r['size']} px") + (" ★" if (r["backbone"], r["size"]) ==
                                                         (winner.get("backbone"), winner.get("size")) else ""),
             *(num(r.get(k)) for k in keys),
             esc(duration(r.get("seconds")) if "seconds" in r else r.get("skipped", ""))]
            for r in choice.get("candidates", [])]
    names = (["cross-validated mAP", "cross-validated loss (BCE per label)", "validation mAP", "validation loss"]
             if multilabel else ["cross-validated accuracy", "cross-validated loss", "validation accuracy"])
    return table(["candidate", *names, "time"], rows)


def metrics_block(m: dict) -> str:
    """Per-class precision, recall and F1, and the confusion matrix, of a ``classification_metrics`` dict."""
    per = m["per_class"]
    rows = [[esc(c), num(r["precision"]), num(r["recall"]), bar(r["f1"], num(r["f1"])), f"{r['support']:,}"]
            for c, r in per.items()]
    html = "<h3>Per class</h3>" + table(["class", "precision", "recall", "F1", "images"], rows)
    weak = sorted(((r["f1"], c) for c, r in per.items() if r["support"]), key=lambda t: t[0])[:3]
    if weak and weak[0][0] < 1:
        html += para("Weakest by F1: " + ", ".join(f"{esc(c)} ({f:.2f})" for f, c in weak if f < 1) + ".", "note")
    html += "<h3>Confusion matrix</h3>" + confusion_html(m["confusion_matrix"], m["classes"])
    return html


def confusion_html(matrix: list[list[int]], classes: list[str]) -> str:
    """Rows are the true classes, columns the predictions; a cell's colour is its share of its row (blue on the
    diagonal, red off it), so a small class's mistakes show as clearly as a large one's."""
    if len(classes) > TABLE_CLASSES:
        picture = figures.confusion_image(matrix, classes)
        return figure(picture, "confusion matrix", "Rows: true class; columns: predicted; colour: share of the true "
                      "class.", width=figures.css_width(picture))
    head = ('<tr><th class="corner">true ↓ predicted →</th>'
            + "".join(f'<th class="rot">{esc(c)}</th>' for c in classes) + "</tr>")
    rows = []
    for i, (name, row) in enumerate(zip(classes, matrix)):
        total = max(1, sum(row))
        cells = []
        for j, n in enumerate(row):
            share = n / total
            rgb = "9,105,218" if i == j else "207,34,46"
            colour = "#fff" if share > 0.55 else "inherit"
            style = f"background:rgba({rgb},{share:.3f});color:{colour}" if n else "color:#c8d1da"
            cells.append(f'<td style="{style}" title="{esc(name)} → {esc(classes[j])}: {n} ({share:.0%})">{n}</td>')
        rows.append(f'<tr><th class="l">{esc(name)}</th>{"".join(cells)}</tr>')
    return f'<div class="tablewrap"><table class="cm"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _weights_kind(source) -> str:
    """``package: /path`` -> ``package weights``; ``file /path`` -> ``file weights``; random initialisation."""
    if not source:
        return "weights not recorded"
    if str(source).startswith("random"):
        return "random initialisation"
    return f"{str(source).split(':', 1)[0].split(' ', 1)[0]} weights"


def _trains(train_from) -> str:
    if train_from is None:
        return "?"
    if train_from == -1:
        return "head only"
    if train_from == 0:
        return "every layer"
    if train_from < 0:
        return f"last {-int(train_from)} layer groups"
    if 0 < train_from < 1:
        return f"first {train_from:.0%} of the backbone frozen"
    return f"groups from {int(train_from)} on"


def _reason_kind(reason: str) -> str:
    """A skipped file's reason, shortened to its kind for counting (the sentence before the first colon)."""
    return reason.split(":", 1)[0].split("(", 1)[0].strip()[:60] or "unreadable"


def run_report(run_dir: str | Path, top_losses: int = 24, max_images: int = 2000, device: str = "auto",
               loaded=None, heatmaps: bool = True) -> str:
    """The HTML of a run's report (see :func:`headstart.report.write_report`)."""
    return RunReport(run_dir, top_losses, max_images, device, loaded, heatmaps).html()


__all__ = ["RunReport", "confusion_html", "metrics_block", "run_report"]
