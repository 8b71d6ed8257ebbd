"""Tables and figures built from the pipeline's result rows."""
