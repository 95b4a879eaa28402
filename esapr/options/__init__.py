"""Options: how one option is declared and checked (``spec``) and the groups every run shares
(``groups``). A model family's own options live with the family (``esapr.families``); the
Config that joins them for one run is ``esapr.config``."""
