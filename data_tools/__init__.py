"""data_tools: from raw chat sources to training shards (schema, readers, mixing, packing)."""
