"""The container engine: finding it, container specs, images, volumes, cgroup readings, Colima.

This is where engine backends live; nothing here knows about git or sessions.
"""
