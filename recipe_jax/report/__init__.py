"""What a person reads: verdicts and stage results, plots, report.html."""
