"""The ``agentrt`` command line: thin verbs over the library, the live view and the reports."""
