"""Video input: decoding (reader), temporal sampling, spatial views (fragments), writing test clips."""
