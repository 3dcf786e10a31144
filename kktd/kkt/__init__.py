"""The Shtrih-M link: pure protocol core, serial transport, the link and the poller."""
