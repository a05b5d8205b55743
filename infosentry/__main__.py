"""python -m infosentry"""

from infosentry.cli import main

main()
