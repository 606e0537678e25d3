"""HTTP: plumbing, handlers for rooms, wallet and admins, the pages and their static files."""
