"""What a finished run or sweep says: results rows, statistics, comparison tables, claims, doctor, plots, HTML."""
