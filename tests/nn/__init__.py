"""Tests of refnas.nn, optim, train, io, demo and estimators."""
