"""The store: the only place with SQL.

One module per aggregate (codes, consents, sessions, apps, initial_tokens). Each owns its
statements, its connection and its transactions: a store function reads or writes, commits what
it wrote, and hands its caller typed results (frozen dataclasses), never a session, a row or a
statement. Callers apply the rules; the store knows nothing of HTTP.
"""
