"""Compliance judges: does a response help with the harmful request? One interface, several backends
(`JUDGES`: embedded, api), used by the `judge` metric and by `medattack judge eval`."""
