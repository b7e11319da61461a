"""The API Keys page: static HTML, CSS and JavaScript served at `/dashboard/`.

The page is a client of the admin API and nothing else: it holds no server-side state and
imports nothing of ours. `routes.add_dashboard_routes(app)` serves it.
"""
