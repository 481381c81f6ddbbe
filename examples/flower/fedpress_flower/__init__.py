"""A Flower app whose clients send fedpress-compressed updates."""
