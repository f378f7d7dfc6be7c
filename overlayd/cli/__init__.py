"""overlayctl, one module per subcommand group."""
