"""A test plugin package: protocols found through an entry point, as a third party would
ship them."""
