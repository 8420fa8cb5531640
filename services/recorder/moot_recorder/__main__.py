from moot_recorder.main import main

main()
