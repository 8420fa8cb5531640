from moot.cli.main import main

main()
