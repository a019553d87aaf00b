from redwork.cli import main

main()
