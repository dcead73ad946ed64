"""What the tests share besides conftest: planted bugs, users' models, servers, a browser."""
