"""Benchmarks that compare nsl's estimators with the field's Shapley estimators under one evaluation meter."""
