"""Results store, comparisons, tables and plots."""
