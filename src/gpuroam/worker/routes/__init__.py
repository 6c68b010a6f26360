"""The worker's routes, one module per concern, each with an `add_routes(router)` that registers them.

`create_app` registers them on the app's own router; a test may register one module alone on a bare
app. Registering rather than `include_router` keeps `app.routes` a flat list of `APIRoute`s (FastAPI
0.165 keeps an included router as one lazy entry there), which is what the --api-auth tests walk to
check that every /sdapi route is guarded and every other route open.
"""
