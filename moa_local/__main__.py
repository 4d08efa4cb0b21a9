from moa_local.cli import main

main()
