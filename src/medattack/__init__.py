"""medattack: red-teaming toolkit for medical multimodal large language models.

Stages (each reads and writes one run directory): build -> attack -> query -> score -> report.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
