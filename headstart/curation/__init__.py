"""Curating the data behind a model: which labels look wrong, and which unlabelled images to label next.

Both work on frozen-backbone features from the feature cache (:mod:`headstart.features`), so after the first pass
they cost head fits and matrix products, not passes through the network:

- :mod:`~headstart.curation.label_issues`: out-of-fold probabilities of a linear probe, given to confident learning
  (cleanlab's ``find_label_issues``; Northcutt et al. 2021), plus the copies the check found labelled differently;
  :mod:`~headstart.curation.label_issues_multilabel` does the same label by label for multi-label data.
- :mod:`~headstart.curation.suggest`: the run's uncertainty on unlabelled images, spread over feature space by a
  k-center greedy pass, so one batch to label holds no near-copies.
"""
