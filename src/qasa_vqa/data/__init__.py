"""Datasets: label files, splits and label budgets, the demo corpus, torch Datasets and DataModules."""
