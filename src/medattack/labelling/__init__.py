"""Labelling a sample of a target's answers, and the rate that stands on those labels.

    design.py   which answers are drawn, in which order (stratified by the judge's verdict), and the estimate
                of any set of answers from the labels that fall in it (estimate.py)
    store.py    the labels file of a target: append, read (the latest row of an answer stands), CSV in and out
    server.py   the labelling page on 127.0.0.1 (`medattack label`)
"""
