"""The control socket: commands (defined apart from any transport), the JSON-lines
wire format, the trio server and a blocking client."""
