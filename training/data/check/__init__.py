"""Dataset validation before training (`cosa data check`): files, index, problems, statistics, report, cache."""
