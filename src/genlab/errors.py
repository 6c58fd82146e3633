"""The one exception type for bad user input."""


class GenlabError(Exception):
    """Bad input (config value, file, checkpoint): the message is the whole story.

    Entry points print it as one line and exit non-zero, without a traceback. The message
    names the config key (``data.root``) or the file it is about.
    """
