"""SQL, one module per table: explicit columns, $n parameters, rows to frozen dataclasses."""
