"""The HTTP layer: one endpoint function per route-table entry, the request's dependencies
(`deps`) and authentication (`auth`). Endpoints take what a request brings (the caller, its
view of the org, the body) and hand it to the domain packages' services; they hold no policy.
"""
