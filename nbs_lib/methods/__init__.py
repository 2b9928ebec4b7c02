"""Methods layer: attacks, evaluation, similarity measures, UAPs, training. Imports core, data and models only."""
