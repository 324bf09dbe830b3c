"""Dataset analyses of arXiv 2405.20775 (Sec. 3): each writes a CSV and a figure into the run."""
