"""Black-box attacks: an attacker model rewrites the request and moves the image, the target answers,
a judge scores, the search keeps what works (PAIR, TAP). Needs no weights or gradients of the target."""
