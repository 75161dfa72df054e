"""Evaluation harness: load BEIR/MMEB sets (loaders), sweep budgets (harness), present results (report).

Import from the submodules, e.g. ``from metaembed.eval.harness import evaluate``; the package itself
stays import-light so loading an eval set does not pull in the index or plotting stacks.
"""
